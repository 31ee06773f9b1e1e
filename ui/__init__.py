"""The studio: a NiceGUI app over the engine (flow library, canvas editor, preview)."""
