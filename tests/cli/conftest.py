from cli.tiny import workdir  # noqa: F401  (the fixture)
