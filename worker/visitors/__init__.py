"""Anonymous visitors: online clustering, visits, their store and reports."""
