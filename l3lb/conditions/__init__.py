"""The Services' conditions (``l3lb.io/Allocated``, ``l3lb.io/Announced``): what the allocator's leader tells
``kubectl`` about each Service of ours, kept from the watches while it leads."""
