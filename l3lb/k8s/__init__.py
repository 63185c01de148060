"""The Kubernetes API: requests, watches, writes (status, Events), the election, permissions."""
