"""Running a jzoo CLI's main() in-process, as a user would from the shell."""


def run_main(main, argv, capsys):
  """Returns (exit code, stdout, stderr) of `main(argv)`."""
  code = 0
  try:
    main(argv)
  except SystemExit as e:
    code = e.code
  out, err = capsys.readouterr()
  return code, out, err
