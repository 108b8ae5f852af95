"""workers: the liveness rows of worker processes; jobs and training runs record the worker holding them

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 16:00:00.000000

A running job or training run whose ``worker_id`` names a worker that is gone (no row, ``last_seen_at``
older than the lease, or a pid that no longer runs on the same host) is re-queued at once by the worker
start-up and by the sweeper instead of waiting for its lease. Rows running before this revision have no
``worker_id`` and keep the lease rule.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('workers',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('hostname', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('node', sa.String(length=255), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_workers_last_seen_at'), ['last_seen_at'], unique=False)
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('worker_id', sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f('ix_jobs_worker_id'), ['worker_id'], unique=False)
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('worker_id', sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f('ix_training_runs_worker_id'), ['worker_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_training_runs_worker_id'))
        batch_op.drop_column('worker_id')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobs_worker_id'))
        batch_op.drop_column('worker_id')
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_workers_last_seen_at'))

    op.drop_table('workers')
