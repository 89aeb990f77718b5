"""The operators' Dash app, its pure figure builders and the background consumer that keeps a bounded view. No decisions."""
