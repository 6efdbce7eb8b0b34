"""The mailbox intake: request files by email, answers by reply."""
