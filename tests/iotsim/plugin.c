/* Placeholder until the simulator plugin lands. */
int iotsim_placeholder(void);
int iotsim_placeholder(void)
{
	return 0;
}
