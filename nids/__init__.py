"""nids-bento: network intrusion detection and self-healing served with BentoML."""
