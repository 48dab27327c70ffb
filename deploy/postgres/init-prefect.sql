-- The Prefect server's own database, beside MLflow's (POSTGRES_DB) on the same PostgreSQL.
-- The postgres image runs this once, when it initialises an empty data volume. For a volume
-- created before this file existed: docker compose exec postgres createdb -U mlflow prefect
CREATE DATABASE prefect;
