from cli.tiny import migrated_mlflow_db, store_workdir, workdir  # noqa: F401  (fixtures)
