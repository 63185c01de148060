"""The node side: what this node announces and keeping its interfaces so."""
