"""What vramgate shows about itself: Prometheus metrics, the status page, the terminal view.

Everything here consumes one picture, the status JSON (``schema: 1``) the gate produces; none of
it decides anything, so a bug here can mislead a reader but never let a load through.
"""
