"""Protocol parties: client and server state machines without I/O."""
