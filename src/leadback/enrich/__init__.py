"""Request enrichment: truncated client IPs, bot detection, consent decisions."""
