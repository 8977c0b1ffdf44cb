"""Who is asking: identities for per-user policy (issue 9), from what the connection already says."""
