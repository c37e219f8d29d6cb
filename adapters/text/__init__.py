"""Jinja prompt environment and the template generator."""
