"""Address management: pools, the assignment of IPs to Services, and the leader's allocator."""
