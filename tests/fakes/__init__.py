"""Local stand-ins for the providers the dispatcher talks to: real HTTP servers on loopback
that check requests the way each provider documents them and answer like it."""
