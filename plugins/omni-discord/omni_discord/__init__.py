"""Omni Hub channel plugin for Discord."""
