-- A regrade's job also counts the attempts in progress it corrected (QuestionCorrected:
-- the question not answered yet, graded with the correction when it is), as its dry run
-- reports them. Null for a rebuild, and for a regrade recorded before this column.
alter table jobs add column open_attempts_corrected bigint check (open_attempts_corrected >= 0);
