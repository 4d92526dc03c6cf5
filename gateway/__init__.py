"""The mail path: receiving, the durable queue, delivery to the primary, standby copies, notices."""
