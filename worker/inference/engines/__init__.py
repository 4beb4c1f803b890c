"""Model-owning compute classes (no asyncio): each is touched only by its engine thread."""
