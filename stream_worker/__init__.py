"""Stream worker: a faust-streaming scorer for applicant records on Kafka."""
