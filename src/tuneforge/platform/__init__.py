"""The fine-tuning platform: OpenAI's files and fine-tuning jobs API in front of tuneforge (docs/platform.md)."""
