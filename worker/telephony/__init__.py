"""Telephony: config checks (``voicestack check-config``) and provisioning of LiveKit SIP
trunks and dispatch rules (``voicestack provision``)."""
