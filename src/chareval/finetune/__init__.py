"""Fine-tuning data and backends."""
