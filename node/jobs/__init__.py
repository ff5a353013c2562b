"""Durable job ledger, executors and the job runner."""
