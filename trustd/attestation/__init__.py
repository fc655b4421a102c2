"""Node attestors: each verifies one kind of evidence and names the node it proves."""
