"""Reading and writing images and videos: PNG, GIF, MP4, and grids."""

from jzoo.io.media import image_grid, read_frames, video_grid, write_gif, write_image, write_media, write_mp4

__all__ = ["image_grid", "read_frames", "video_grid", "write_gif", "write_image", "write_media", "write_mp4"]
