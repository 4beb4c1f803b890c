"""The stack's control plane: config rendering per profile, process specs, the supervisor
that starts/monitors/stops the children, and ``voicestack up``."""
