"""Everything ralph does with git, and the receipts it writes into commits."""
