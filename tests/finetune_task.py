"""The digits task with the user's own fine-tuning function (recovery 'task')."""

from tuner.build.prune import recalibrate_batchnorm
from tuner.task import Task
from tuner.tasks.digits_cnn import make_task as digits

CALLS = []


def make_task(**args) -> Task:
    task = digits(**args)

    def finetune(model):
        CALLS.append(type(model).__name__)
        recalibrate_batchnorm(model, task.calibration_inputs)

    return Task(task.model, task.example_inputs, task.calibration_inputs, task.evaluation, task.output_layers,
                finetune=finetune)
