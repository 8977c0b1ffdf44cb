"""Per-user policy: which models, how much GPU memory and context, and which store operations each
user may have. ``rules`` reads and validates the policy file's text; ``resolve`` turns it and an
identity into one user's effective rules and answers questions against them. No I/O here."""
