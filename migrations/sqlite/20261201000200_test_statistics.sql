-- The test_statistics read model: its own copy of each attempt (the same columns as
-- assessments, so the same code keeps it) and every graded answer, from which item
-- statistics are computed per test and definition version. Its own tables and checkpoint,
-- so it can be rebuilt on its own.
create table statistics_attempts
(
    user_id         text not null,
    assessment_id   text not null,
    test_id         text not null,
    test_version    integer not null,
    title           text not null,
    attempt         integer not null,
    status          text not null check (status in ('in_progress', 'completed')),
    answered        integer not null,
    total_questions integer not null,
    score           real not null,
    max_score       real not null,
    passed          integer,
    reason          text,
    started_at      text not null,
    deadline        text,
    completed_at    text,
    duration_secs   real,
    primary key (user_id, assessment_id)
);

create index statistics_attempts_by_test on statistics_attempts (test_id, test_version);

-- One row per graded answer: an attempt answers each question once.
create table statistics_answers
(
    user_id       text not null,
    assessment_id text not null,
    question_id   text not null,
    score         real not null,
    max_score     real not null,
    primary key (user_id, assessment_id, question_id)
);
