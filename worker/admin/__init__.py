"""The admin API and the watchlist operations it shares with the CLI; the audit log."""
