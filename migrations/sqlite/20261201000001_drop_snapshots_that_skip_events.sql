-- Snapshots written before this release may hold the state after fewer events than the
-- sequence they are labelled with (a multi-event commit that crossed the snapshot
-- boundary), so loads started from them skipped events. Snapshots are only a cache: drop
-- them all, and the next commits write correct ones.
delete from snapshots;
