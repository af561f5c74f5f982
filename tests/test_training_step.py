"""What one training step of `run_finetune.py` computes, beyond its result: no backward through the frozen backbone
stages, and the recipe's AdamW through the fused kernel with the for-loop AdamW's numbers (issue 11's training speed).
"""

import torch

from conftest import bottleneck_backbone_config, graph_nodes, is_convolution_backward, tiny_config

import run_finetune
from modeling_intr import IntrForImageClassification
from modeling_intr.data import collate_images
from modeling_intr.training import parameter_groups


def test_no_backward_runs_through_the_frozen_stages():
    """The frozen stem and stage 1 record no autograd graph: the backward runs one convolution backward per trainable
    convolution (stages 2.., the input projection) and none for a frozen one, so no gradient is computed there, not
    even one that is then thrown away; the first trainable convolutions get no input gradient to compute."""
    torch.manual_seed(0)
    model = IntrForImageClassification(tiny_config(backbone_config=bottleneck_backbone_config())).train()
    stage_outputs = {}
    stages = model.model.backbone.model.encoder.stages
    for index, stage in enumerate(stages):
        stage.register_forward_hook(lambda module, inputs, output, i=index: stage_outputs.__setitem__(i, output))
    loss = model(torch.randn(2, 3, 64, 64), labels=torch.tensor([0, 1])).loss
    assert not stage_outputs[0].requires_grad and stage_outputs[1].requires_grad

    trainable_convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.requires_grad]
    frozen_convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and not m.weight.requires_grad]
    # stem + stage 1 (one block and its shortcut) | stage 2 (two blocks, one shortcut), stage 3, input projection
    assert len(frozen_convs) == 1 + 4 and len(trainable_convs) == 7 + 4 + 1
    conv_backwards = [node for node in graph_nodes(loss) if is_convolution_backward(node)]
    assert len(conv_backwards) == len(trainable_convs)
    # stage 2's first block: its first convolution and its shortcut take stage 1's output, which needs no gradient
    no_input_gradient = [node for node in conv_backwards if node.next_functions[0][0] is None]
    assert len(no_input_gradient) == 2


def test_recipe_optimizer_is_the_fused_adamw():
    """`run_finetune.py` pins the fused AdamW kernel whatever transformers' default (the for-loop AdamW before torch
    2.8, 3x slower on CPU), with the recipe's groups; `--optim` still chooses another."""
    argv = ["--config_name", "c.json", "--dataset_name", "d", "--output_dir", "out", "--do_train", "--use_cpu"]
    training_args = run_finetune.parse_arguments(argv)[2]
    assert training_args.optim == "adamw_torch_fused"
    model = IntrForImageClassification(tiny_config())
    dataset = [{"pixel_values": torch.zeros(3, 32, 32), "labels": 0}] * 4
    trainer = run_finetune.IntrTrainer(model=model, args=training_args, train_dataset=dataset,
                                       data_collator=collate_images, backbone_learning_rate=1e-5, lr_drop=80)
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"]
    assert [group["lr"] for group in optimizer.param_groups] == [5e-5, 1e-5]
    assert run_finetune.parse_arguments(argv + ["--optim", "adamw_torch"])[2].optim == "adamw_torch"


def test_fused_adamw_takes_the_for_loop_adamws_steps():
    """The same parameters, within rounding, after 3 steps of the recipe (two groups, weight decay, gradient clipping
    0.1) through the fused kernel and through the for-loop AdamW. In float64: some gradients are exactly zero up to
    rounding (the first decoder layer's self-attention sees only the zero target), and Adam scales a float32 rounding
    residue up to a learning-rate-sized step."""
    torch.manual_seed(0)
    models = [IntrForImageClassification(tiny_config(dropout=0.0, attention_dropout=0.0)).double().train()
              for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    optimizers = [torch.optim.AdamW(parameter_groups(model, 1e-3, 1e-4, 1e-4), lr=1e-3, **options)
                  for model, options in zip(models, ({"fused": True}, {"foreach": False, "fused": False}))]
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        pixel_values = torch.randn(2, 3, 48, 48, generator=generator, dtype=torch.float64)
        labels = torch.tensor([0, 3])
        for model, optimizer in zip(models, optimizers):
            model(pixel_values, labels=labels).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            optimizer.step()
            model.zero_grad()
    fused, for_loop = (dict(model.named_parameters()) for model in models)
    moved = 0
    for name, parameter in for_loop.items():
        torch.testing.assert_close(fused[name], parameter, rtol=1e-10, atol=1e-12, msg=name)
        moved += parameter.requires_grad
    assert moved > 0
