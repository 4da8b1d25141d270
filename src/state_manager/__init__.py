"""state-manager: conversation state for WhatsApp <-> Genesys Cloud."""
