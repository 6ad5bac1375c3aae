-- MLflow and Optuna each keep an `alembic_version` table: they need separate databases.
-- The `mlflow` database is created by the image from POSTGRES_DB.
CREATE DATABASE optuna OWNER rtlab;
