"""The kernel's side: rtnetlink requests, dumps and notifications, and the address tables."""
