"""evaluation."""

from fastapi import APIRouter

router = APIRouter()
