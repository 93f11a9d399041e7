"""The dispatcher: audience changes -> campaign steps -> messages through destinations."""
