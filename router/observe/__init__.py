"""Observation: metrics, monitoring, prediction log, feedback, alerts, webhooks."""
