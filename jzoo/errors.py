"""User-facing errors: one line that says what to do; CLIs exit with status 2."""


class UserError(Exception):
  """An error caused by the user's input. The message says how to fix it."""

  exit_code = 2


class ConfigError(UserError):
  """Bad --config path, variant or override."""


class CheckpointError(UserError):
  """A checkpoint that is missing or cannot be read."""


class DataError(UserError):
  """A dataset that cannot be found or read."""


class PromptError(UserError):
  """A prompt that the model cannot take."""


class TrainingDiverged(UserError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


class CapabilityError(UserError):
  """A request the model cannot serve (story mode, start frames, ...); says what it can do."""
