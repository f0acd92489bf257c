"""certpager bridge: Alertmanager webhooks in, PagerDuty and Statuspage events out, durably."""
