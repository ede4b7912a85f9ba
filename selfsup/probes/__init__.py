"""Everything that measures an encoder: frozen-layer linear probes (more protocols to come)."""
