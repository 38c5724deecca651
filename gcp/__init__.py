"""What runs on the VM: the COS startup and shutdown scripts (read as package data by the GCE backend)."""
