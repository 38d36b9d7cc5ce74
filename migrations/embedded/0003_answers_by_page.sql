-- Answers evicted from memory are read back from their commit's page in `answers` (memory
-- keeps each one's page number), so they are no longer copied into an index of their own.
-- Every answer in `requests` is also on its page, which is pruned no earlier than it.
DROP TABLE requests;
