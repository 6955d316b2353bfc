"""A list page stays consistent with itself when rows vanish while it is read (another client deletes them)."""

from __future__ import annotations

from sqlalchemy import delete, event, select
from sqlalchemy.orm import Session

from embedforge.platform.store import make_engine, migrate
from embedforge.platform.store.listing import page
from embedforge.platform.store.models import Entity


def test_a_row_deleted_between_the_count_and_the_bodies_leaves_the_page_and_its_count(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    migrate(engine)
    with Session(engine) as db:
        db.add_all(
            Entity(id=f"e{i}", kind="dataset", namespace="ns", name=f"d{i}", body={}) for i in range(6)
        )
        db.commit()
    deleted: list[str] = []

    def delete_one_before_each_body_read(conn, cursor, statement, *_):
        if "entities.body" in statement and "count(" not in statement.lower():
            victim = f"e{len(deleted)}"
            with Session(engine) as other:  # another client, on its own connection
                other.execute(delete(Entity).where(Entity.id == victim))
                other.commit()
            deleted.append(victim)

    with Session(engine) as db:
        query = select(Entity).where(Entity.kind == "dataset")
        event.listen(engine, "before_cursor_execute", delete_one_before_each_body_read)
        try:
            listed = page(db, query, Entity, {"page_size": "100"}, lambda row: {"id": row.id})
        finally:
            event.remove(engine, "before_cursor_execute", delete_one_before_each_body_read)
    assert deleted, "no body read happened"
    ids = [row["id"] for row in listed["data"]]
    assert listed["pagination"]["total_results"] == len(ids) == listed["pagination"]["current_page_size"]
    assert not set(ids) & set(deleted)
