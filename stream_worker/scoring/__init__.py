"""Pure scoring: decode and validate, encode, predict, drift, metrics.

No Faust, no Kafka, no pandas: everything here is tested without a broker.
"""
