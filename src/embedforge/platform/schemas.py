"""Request bodies in NVIDIA's field names (NeMo Microservices 1.5); an unknown field is a 422 naming its path.

Only what a request may send is modelled here: responses are the stored bodies plus server fields.
Fields the platform accepts but does not act on (GPU counts, parallelism, W&B) are kept as given.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

FinetuningType = Literal["all_weights", "lora_merged", "lora"]
TrainingType = Literal["sft", "dpo", "distillation", "grpo"]
Precision = Literal["bf16", "bf16-mixed", "fp16", "fp32", "int8", "fp8-mixed"]
Name = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Common(Strict):
    """The fields every NeMo entity accepts."""

    description: str | None = None
    project: str | None = None
    custom_fields: dict[str, Any] | None = None
    ownership: dict[str, Any] | None = None


class NamespaceCreate(Common):
    id: str = Name


class DatasetCreate(Common):
    name: str = Name
    namespace: str = "default"
    files_url: str
    format: str | None = None
    hf_endpoint: str | None = None
    split: str | None = None
    limit: int | None = None


class ProjectCreate(Common):
    name: str = Name
    namespace: str = "default"


class ModelCreate(Common):
    name: str = Name
    namespace: str = "default"
    base_model: str | dict[str, Any] | None = None
    model_providers: list[str] | None = None
    peft: dict[str, Any] | None = None
    artifact: dict[str, Any] | None = None
    spec: dict[str, Any] | None = None
    api_endpoint: dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    guardrails: dict[str, Any] | None = None


class TargetCreate(Common):
    name: str = Name
    namespace: str = "default"
    base_model: str | None = None
    model_uri: str | None = None
    model_path: str | None = None
    num_parameters: int
    precision: Precision
    enabled: bool = True
    hf_endpoint: str | None = None
    tokenizer: dict[str, Any] | None = None


class TrainingOption(Strict):
    training_type: TrainingType = "sft"
    finetuning_type: FinetuningType
    num_gpus: int = 1
    num_nodes: int = 1
    micro_batch_size: int = Field(1, ge=1)
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int | None = None
    expert_model_parallel_size: int | None = None
    use_sequence_parallel: bool = False


class OptionRemoval(Strict):
    """A training option a config update removes, named by its two types."""

    training_type: TrainingType = "sft"
    finetuning_type: FinetuningType


class ConfigCreate(Common):
    name: str = Name
    namespace: str = "default"
    target: str | TargetCreate
    training_options: list[TrainingOption] = Field(min_length=1)
    training_precision: Precision = "bf16"
    max_seq_length: int = Field(2048, ge=8)
    prompt_template: str | None = None
    chat_prompt_template: str | None = None
    dataset_schemas: list[dict[str, Any]] | None = None
    pod_spec: dict[str, Any] | None = None


class LoraParameters(Strict):
    adapter_dim: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    adapter_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | None = None


class Hyperparameters(Strict):
    finetuning_type: FinetuningType
    training_type: TrainingType = "sft"
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(1e-5, gt=0)
    lora: LoraParameters | None = None
    warmup_steps: int | None = Field(None, ge=0)
    weight_decay: float | None = Field(None, ge=0)
    seed: int = 42
    max_steps: int | None = None
    optimizer: str | None = None
    adam_beta1: float | None = None
    adam_beta2: float | None = None
    min_learning_rate: float | None = None
    log_every_n_steps: int | None = Field(None, ge=1)
    val_check_interval: float | None = None
    sequence_packing_enabled: bool | None = None
    sft: dict[str, Any] | None = None
    distillation: dict[str, Any] | None = None
    dpo: dict[str, Any] | None = None
    grpo: dict[str, Any] | None = None


class DatasetRef(Strict):
    name: str = Name
    namespace: str = "default"


class CustomizationJobCreate(Common):
    name: str | None = None
    namespace: str = "default"
    config: str | ConfigCreate
    dataset: str | DatasetRef
    hyperparameters: Hyperparameters
    output_model: str | None = None
    integrations: list[dict[str, Any]] | None = None
    dataset_parameters: dict[str, Any] | None = None


class NimDeployment(Strict):
    image_name: str | None = None
    image_tag: str | None = None
    gpu: int | None = None
    disable_lora_support: bool | None = None
    additional_envs: dict[str, str] | None = None
    namespace: str | None = None
    pvc_size: str | None = None
    tolerations: list[dict[str, Any]] | None = None
    precision: Literal["fp32", "int8"] | None = None  # embedforge: which exported graph to serve


class DeploymentConfigCreate(Common):
    name: str = Name
    namespace: str = "default"
    model: str
    nim_deployment: NimDeployment | None = None
    external_endpoint: dict[str, Any] | None = None


class InlineDeploymentConfig(Strict):
    model: str
    nim_deployment: NimDeployment | None = None


class ModelDeploymentCreate(Common):
    name: str = Name
    namespace: str = "default"
    config: str | InlineDeploymentConfig | DeploymentConfigCreate
    async_enabled: bool | None = None
    hf_token: str | None = None
    models: list[str] | None = None


class ApiEndpoint(Strict):
    url: str
    model_id: str
    api_key: str | None = None
    format: Literal["nim", "openai", "lama_stack"] | None = None


class EmbeddingModel(Strict):
    api_endpoint: ApiEndpoint


class RetrieverPipeline(Strict):
    query_embedding_model: EmbeddingModel
    index_embedding_model: EmbeddingModel | None = None
    reranker_model: dict[str, Any] | None = None
    top_k: int = Field(10, ge=1)


class RetrieverTarget(Strict):
    pipeline: RetrieverPipeline


class EvalTargetCreate(Common):
    name: str | None = None
    namespace: str = "default"
    type: Literal["retriever"]
    retriever: RetrieverTarget


class MetricSpec(Strict):
    type: str
    params: dict[str, Any] | None = None


class TaskDataset(Strict):
    files_url: str
    format: str | None = None


class TaskSpec(Strict):
    type: Literal["beir"]
    dataset: TaskDataset
    metrics: dict[str, MetricSpec] = Field(min_length=1)
    params: dict[str, Any] | None = None


class EvalConfigCreate(Common):
    name: str | None = None
    namespace: str = "default"
    type: Literal["retriever"]
    tasks: dict[str, TaskSpec] = Field(min_length=1)
    params: dict[str, Any] | None = None


class EvaluationJobCreate(Common):
    name: str | None = None
    namespace: str = "default"
    config: str | EvalConfigCreate
    target: str | EvalTargetCreate
    baseline_target: str | EvalTargetCreate | None = None  # embedforge: a second model, compared paired


class EvalResultCreate(Common):
    """An evaluation result a client records itself (the evaluator stores its own the same way)."""

    namespace: str = "default"
    job: str
    files_url: str | None = None
    tasks: dict[str, Any] | None = None
    groups: dict[str, Any] | None = None


def update_schema(create: type[BaseModel], **extra: Any) -> type[BaseModel]:
    """NeMo's PATCH body for a resource: every field of its create body, optional, plus ``extra`` (field ->
    type); an unknown field is still a 422. Identity fields may be sent but must match the path."""
    fields: dict[str, Any] = {
        name: (info.annotation | None, FieldInfo.merge_field_infos(info, default=None))
        for name, info in create.model_fields.items()
    }
    fields["schema_version"] = (str | None, None)
    fields.update({name: (kind | None, None) for name, kind in extra.items()})
    return create_model(f"{create.__name__.removesuffix('Create')}Update", __base__=Strict, **fields)


def dump(model: BaseModel) -> dict[str, Any]:
    """The fields the client sent (unset defaults left out), ready to store."""
    return model.model_dump(exclude_unset=True, mode="json")
