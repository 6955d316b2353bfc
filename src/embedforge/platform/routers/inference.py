"""inference."""

from fastapi import APIRouter

router = APIRouter()
